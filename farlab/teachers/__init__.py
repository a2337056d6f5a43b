"""Teachers: strategies (base vs SFT init, frozen vs co-trained) and the SFT-teacher store."""

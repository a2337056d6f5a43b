"""The post-hoc workbench: why a student learned or did not (probe, cka, disagree, headft). See docs/workbench.md."""

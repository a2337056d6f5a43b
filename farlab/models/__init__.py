"""Model loading and the student-teacher module."""

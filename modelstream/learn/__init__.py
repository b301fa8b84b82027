"""Pure numpy learners, metrics, cross-validation and artifacts shared by every service."""

"""sas_model."""

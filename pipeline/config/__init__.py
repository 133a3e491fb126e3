"""Configuration: YAML into frozen typed models (base toolkit, loader, the composed model, Vault)."""

"""Domain model: records produced by mappings and the services that apply them."""

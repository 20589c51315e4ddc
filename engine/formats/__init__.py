"""File formats: .tpk (safetensors container + schema). Readers know no model."""

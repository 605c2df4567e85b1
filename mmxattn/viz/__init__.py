"""Looking at a model: cross-attention maps (`attention_maps`), their pictures (`attention_plots`) and the
matplotlib helpers that context views share (`plotting`)."""

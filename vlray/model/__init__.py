"""The model: finding and loading it, device profiles, the weights cache, the fp16 residual, the vision encoder and its cache, presets."""

"""What `-m` means and what a model file holds: resolve, hub, catalogue, the
bounded GGUF check, naming, anatomy. Never imports llama_cpp."""

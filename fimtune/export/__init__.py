"""`fimtune export`: hand a trained run to a serving stack (llama.cpp's GGUF, Ollama, vLLM) with its exact template."""

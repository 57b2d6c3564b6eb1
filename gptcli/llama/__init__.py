"""The only package that imports llama_cpp: engine, captures, batches, grammars,
loading and the first-load check, the chat-template sandbox, prompts."""

"""gptcli: run, pipe, chat with and look inside a GPT-style language model."""

__version__ = "0.1.0"

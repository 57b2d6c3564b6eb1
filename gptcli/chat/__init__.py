"""The interactive chat: one REPL over one chat-session protocol, and the
conversation it keeps."""

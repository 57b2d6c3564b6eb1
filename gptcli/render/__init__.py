"""How things look: one module per view; the only place that formats for a
terminal (through terminal.py)."""

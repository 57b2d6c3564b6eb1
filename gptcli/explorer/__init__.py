"""`gptcli explore`: walk the next-token distribution token by token, and branch.

tree.py holds the branch tree (pure, with its JSON file), dist.py the distribution
math shown at a node (pure numpy), session.py joins them to the engine, and app.py
is the Textual app. Only app.py imports Textual.
"""

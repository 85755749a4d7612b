"""The agent's offline tool environment, built from a run's own documents (DESIGN §1, rollouts).

``search`` (BM25 over the documents), ``visit`` (a document's text) and ``python`` (a
sandboxed interpreter) answer the tool calls of the rollouts agent; ``environment``
dispatches a validated call to them. Nothing here reaches the network.
"""

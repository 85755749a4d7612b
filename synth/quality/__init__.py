"""`agentcpt quality RUN`: the corpus quality gate (issue 15/16).

``report.py`` composes the figures and writes ``runs/<id>/quality.json``; each section is
computed by the module of its synthesis: ``has.py`` (decisions: chosen-option probe, filled
share, length ratio; rollout outcomes; corpus tokens per kind and CPT stage vs targets) and
``fas.py`` (memory support rate, question rejection reasons, planning reasons, reasoning
accuracy before/after the filter). Every section function takes a ``RunLayout`` and
returns a pydantic model.
"""

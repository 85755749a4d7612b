"""Rendering records into CPT text with the ReAct tags of the Tongyi DeepResearch agent."""

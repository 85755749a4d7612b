"""Ingest for the documents stage: input readers (HTML, WARC, JSONL) and text extraction."""

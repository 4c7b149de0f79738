"""Text helpers the stages share: sentences, protected spans (numbers, IDs, URLs, code),
units of a context, tool-call turn grouping and budgeted selection."""

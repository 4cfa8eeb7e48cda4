"""Commands built on trained models rather than training loops: `rlhfkit demo` (the whole pipeline
end to end) and `rlhfkit score` (score rows with a saved reward model)."""

"""GPU inference: design -> prompts -> generate -> tidy response table."""

"""Report figures, tables and the HTML page."""

"""Static galleries: the builder, the HTML pages and their helpers."""

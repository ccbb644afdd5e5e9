"""Built-in processors. Each registers under the ``streamkit.processors`` entry-point group."""

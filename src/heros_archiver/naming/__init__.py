"""From an item to a path: templates in a bounded Jinja2 sandbox, the archive root, lexical confinement."""

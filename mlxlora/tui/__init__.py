"""The full-screen studio: a Textual face on the engine. It reads the workspace and run
directories and starts work as child processes of the same CLI; it never imports mlx, torch
or transformers (tests/unit/test_import_hygiene.py checks it)."""

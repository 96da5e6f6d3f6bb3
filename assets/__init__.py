"""The app's assets (knowledge base, earcon, tray icons): kept at the project's top level, shipped in
the wheel and the bundles as the package ``app.assets`` (pyproject.toml maps it here)."""

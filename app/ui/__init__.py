"""The desktop UI: transcript pane and the bridge from the engine's thread to the GUI thread."""

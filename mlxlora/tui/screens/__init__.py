"""One module per tab of the app; each tab is a widget that reads the workspace itself."""

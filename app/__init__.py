"""The sptelab web app: a FastAPI shell around the engine that serves the player, the compare view, the
scenario editor and the JSON API of contract section 5."""

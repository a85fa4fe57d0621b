"""The app's routers: pages (HTML), the JSON API, and the health check."""

"""From a request for (servable, method, version) to the worker that runs it, and its results back."""

"""What featviz concludes: ``query`` (one target's dream beside its corpus exemplars),
``flags`` (the figures behind each warning) and ``audit`` (the seven checks)."""

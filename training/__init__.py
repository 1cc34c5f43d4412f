"""Training at tiny scale: the synthetic conversation, its metrics (numpy only), and the three stages."""

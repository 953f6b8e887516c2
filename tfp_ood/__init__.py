"""tfp_ood (bootstrap)."""

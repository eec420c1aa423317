"""Who calls and what they may use: tokens and tenants, the auth gate, and quotas."""

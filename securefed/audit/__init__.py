"""The site's tamper-evident audit log of what its node sent and revealed in every round."""

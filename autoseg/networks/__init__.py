"""Networks built from a planned configuration: the generic U-Net (plain and residual encoder), the
Attention U-Net, the network registry, and torch.compile with a fallback.
"""

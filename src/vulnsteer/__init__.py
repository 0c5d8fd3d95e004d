"""vulnsteer: steer code LLMs toward finding security vulnerabilities, and measure honestly whether it helps.

Pipeline: data -> prompts -> activations -> vectors -> steering -> detection -> evaluation -> report.

Sign convention: a vector's direction is ``mean(secure) - mean(vulnerable)``; **positive steering strength pushes
the model toward reporting a vulnerability** (the direction is subtracted).
"""

__version__ = "0.1.0"

"""What runs the lessons on one machine: stand-in servers, background services, load and demos.

None of it is the product. No image ships this folder (.dockerignore leaves it out, the Lambda
image copies named modules only), and the serving modules never import it.
"""

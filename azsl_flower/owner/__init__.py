"""The data owner's side: everything that runs where the private features live.

Imported only by ``azsl_flower.client_app`` (and simulations that play an owner); the
service side never imports it (a test checks the import graph).
"""

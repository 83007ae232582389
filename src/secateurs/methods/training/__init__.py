"""methods/training"""

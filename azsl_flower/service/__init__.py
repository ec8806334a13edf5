"""The AI service's learning side: it knows class names, semantic vectors and what the
owners declared, and the only feature arrays it ever holds are its generator's."""

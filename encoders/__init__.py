"""Built-in encoder plugins. Each registers through the `mmxattn.encoders` entry-point group, exactly as a
third-party package would; mmxattn's core never imports this package by name."""

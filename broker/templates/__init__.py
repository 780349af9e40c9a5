"""Prompt templates as APIs (README "Prompt templates"): the spec, its sandboxed rendering.

A template is a named, versioned chat prompt: messages with Jinja2 placeholders, default
request parameters and declared variables. Callers send only variables; ingress renders
the messages in Jinja2's sandbox and runs the result as an ordinary chat request.
"""

from broker.templates.rendering import MAX_RENDERED_CHARS, render_body
from broker.templates.spec import PromptTemplate, TemplateSpec, TemplateVariable

__all__ = ["MAX_RENDERED_CHARS", "PromptTemplate", "TemplateSpec", "TemplateVariable",
           "render_body"]

; Definitions and imports of Python, for the cross-file context index (fimtune/context.py).
; Captures: @definition.<kind> (the whole definition), @name, @body (elided in the stub), @doc (docstring kept),
; @import (module specifier), @import.member (a name imported from it; may itself be a module).
; When several patterns capture the same @name node they are merged: the largest node, the first pattern's kind.

(function_definition
  name: (identifier) @name
  body: (block . (expression_statement (string) @doc)?) @body) @definition.function

(decorated_definition
  definition: (function_definition name: (identifier) @name)) @definition.function

(class_definition
  name: (identifier) @name
  body: (block . (expression_statement (string) @doc)?) @body) @definition.class

(decorated_definition
  definition: (class_definition name: (identifier) @name)) @definition.class

(module
  (expression_statement
    (assignment left: (identifier) @name) @definition.constant)
  (#match? @name "^_?[A-Z][A-Z0-9_]*$"))

(import_statement name: (dotted_name) @import)
(import_statement name: (aliased_import name: (dotted_name) @import))
(import_from_statement module_name: (_) @import (wildcard_import))
(import_from_statement module_name: (_) @import name: (dotted_name) @import.member)
(import_from_statement module_name: (_) @import name: (aliased_import name: (dotted_name) @import.member))

; Definitions and imports of JavaScript, for the cross-file context index (fimtune/context.py).
; Captures: @definition.<kind> (the whole definition), @name, @body (elided in the stub), @doc (docstring kept),
; @import (module specifier as written, quotes included).
; When several patterns capture the same @name node they are merged: the largest node, the first pattern's kind.

(function_declaration name: (identifier) @name body: (_) @body) @definition.function
(generator_function_declaration name: (identifier) @name body: (_) @body) @definition.function

(class_declaration name: (_) @name body: (_) @body) @definition.class

(method_definition name: (_) @name body: (_) @body) @definition.method

(lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function body: (_) @body) (function_expression body: (_) @body)])) @definition.function

(variable_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function body: (_) @body) (function_expression body: (_) @body)])) @definition.function

(lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: (class body: (_) @body))) @definition.class

(import_statement source: (string) @import)
(export_statement source: (string) @import)
(call_expression
  function: (identifier) @_require
  arguments: (arguments . (string) @import)
  (#eq? @_require "require"))
(call_expression function: (import) arguments: (arguments . (string) @import))

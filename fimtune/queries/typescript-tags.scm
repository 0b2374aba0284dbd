; Definitions and imports of TypeScript (and TSX, which has no file of its own), for the cross-file context
; index (fimtune/context.py).
; Captures: @definition.<kind> (the whole definition), @name, @body (elided in the stub), @doc (docstring kept),
; @import (module specifier as written, quotes included).
; When several patterns capture the same @name node they are merged: the largest node, the first pattern's kind.

(function_declaration name: (identifier) @name body: (_) @body) @definition.function
(generator_function_declaration name: (identifier) @name body: (_) @body) @definition.function
(function_signature name: (identifier) @name) @definition.function

(class_declaration name: (_) @name body: (_) @body) @definition.class
(abstract_class_declaration name: (_) @name body: (_) @body) @definition.class
(interface_declaration name: (_) @name body: (_) @body) @definition.interface
(enum_declaration name: (_) @name body: (_) @body) @definition.type
(type_alias_declaration name: (_) @name) @definition.type

(method_definition name: (_) @name body: (_) @body) @definition.method
(abstract_method_signature name: (_) @name) @definition.method

(lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function body: (_) @body) (function_expression body: (_) @body)])) @definition.function

(variable_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function body: (_) @body) (function_expression body: (_) @body)])) @definition.function

(import_statement source: (string) @import)
(import_statement (import_require_clause source: (string) @import))
(export_statement source: (string) @import)
(call_expression
  function: (identifier) @_require
  arguments: (arguments . (string) @import)
  (#eq? @_require "require"))
(call_expression function: (import) arguments: (arguments . (string) @import))

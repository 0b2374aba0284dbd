; Definitions and imports of Go, for the cross-file context index (fimtune/context.py).
; Captures: @definition.<kind> (the whole definition), @name, @body (elided in the stub), @doc (docstring kept),
; @import (import path as written, quotes included). Doc comments above a definition are found without a capture.
; When several patterns capture the same @name node they are merged: the largest node, the first pattern's kind.

(function_declaration name: (identifier) @name body: (_) @body) @definition.function
(method_declaration name: (field_identifier) @name body: (_) @body) @definition.method

(type_spec name: (type_identifier) @name type: (struct_type (field_declaration_list) @body)) @definition.class
(type_spec name: (type_identifier) @name type: (interface_type) @body) @definition.interface
(type_spec name: (type_identifier) @name) @definition.type
(type_alias name: (type_identifier) @name) @definition.type

(import_spec path: (_) @import)

; Definitions and includes of C++, for the cross-file context index (fimtune/context.py).
; Captures: @definition.<kind> (the whole definition), @name, @body (elided in the stub), @doc (docstring kept),
; @import (include path as written: "x.h" with quotes, <x.h> with brackets). Comments above are found without
; a capture. When several patterns capture the same @name node they are merged: the largest node, the first
; pattern's kind.

(template_declaration
  (function_definition
    declarator: (function_declarator
      declarator: [(identifier) (field_identifier) (qualified_identifier) (destructor_name) (operator_name)] @name))) @definition.function

(template_declaration
  [(class_specifier name: (_) @name) (struct_specifier name: (_) @name)]) @definition.class

(function_definition
  declarator: [
    (function_declarator
      declarator: [(identifier) (field_identifier) (qualified_identifier) (destructor_name) (operator_name)] @name)
    (pointer_declarator
      declarator: (function_declarator
        declarator: [(identifier) (field_identifier) (qualified_identifier) (operator_name)] @name))
    (reference_declarator
      (function_declarator
        declarator: [(identifier) (field_identifier) (qualified_identifier) (operator_name)] @name))
  ]
  body: (compound_statement) @body) @definition.function

(declaration
  declarator: [
    (function_declarator declarator: [(identifier) (qualified_identifier)] @name)
    (pointer_declarator declarator: (function_declarator declarator: [(identifier) (qualified_identifier)] @name))
  ]) @definition.function

(class_specifier name: (_) @name body: (field_declaration_list) @body) @definition.class
(struct_specifier name: (_) @name body: (field_declaration_list) @body) @definition.class
(union_specifier name: (_) @name body: (field_declaration_list) @body) @definition.class
(enum_specifier name: (_) @name body: (enumerator_list) @body) @definition.type
(type_definition declarator: (type_identifier) @name) @definition.type
(alias_declaration name: (type_identifier) @name) @definition.type
(concept_definition name: (identifier) @name) @definition.type
(preproc_function_def name: (identifier) @name) @definition.macro
(preproc_def name: (identifier) @name) @definition.constant

(preproc_include path: (_) @import)

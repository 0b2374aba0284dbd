; Middles for Java. Each capture name is a span kind (see fimtune/corpus/spans.py);
; captures whose name starts with "_" are helpers and never become middles.
; Every syntax kind exists in Java.
; "statements" (2-4 consecutive sibling @statement nodes), "empty" (also after a @statement) and the line kinds
; are made by spans.py; kinds not captured here simply have no candidates in this language.

; statement: one statement in a block, or one member of a class / interface body.
[
  (expression_statement) (local_variable_declaration) (return_statement) (throw_statement)
  (break_statement) (continue_statement) (yield_statement) (assert_statement) (if_statement)
  (for_statement) (enhanced_for_statement) (while_statement) (do_statement) (try_statement)
  (try_with_resources_statement) (switch_expression) (synchronized_statement) (labeled_statement)
  (field_declaration) (method_declaration) (constructor_declaration) (class_declaration)
  (interface_declaration) (enum_declaration) (record_declaration) (import_declaration)
] @statement

; block: what is between the braces of a method, constructor, loop, if, class or interface body
; (spans.py trims it to whole lines).
(block) @block
(constructor_body) @block
(class_body) @block
(interface_body) @block
(enum_body) @block
(switch_block) @block

; call_args: inside the parentheses of a method call or a `new`.
(method_invocation arguments: (argument_list) @call_args)
(object_creation_expression arguments: (argument_list) @call_args)
(explicit_constructor_invocation arguments: (argument_list) @call_args)

; condition: the test of if / while / do-while without its parentheses; the test of a for loop.
(if_statement condition: (parenthesized_expression) @condition)
(while_statement condition: (parenthesized_expression) @condition)
(do_statement condition: (parenthesized_expression) @condition)
(for_statement condition: (_) @condition)

; assignment_rhs: an initialiser (locals and fields) or the right-hand side of an assignment.
(variable_declarator value: (_) @assignment_rhs)
(assignment_expression right: (_) @assignment_rhs)

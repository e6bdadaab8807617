"""Users (admins only): list accounts, add one, change a role, reset a password, remove one.

The same UserStore as ``parkwatch cloud users``; every change is audited under the signed-in
admin. A new or reset password is shown once on the response page and never stored in a cookie.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud.dashboard.users import Role, generate_password
from cloud.dashboard.web import audit, form, redirect, render, require, run_change, services

router = APIRouter()


def _page(request: Request, status_code: int = 200, new_password: tuple[str, str] | None = None) -> Response:
    users = services(request).get_users().list()
    return render(
        request,
        "users.html.j2",
        status_code=status_code,
        title="Users",
        users=users,
        roles=[r.value for r in Role],
        new_password=new_password,
    )


@router.get("/users")
def users_page(request: Request) -> Response:
    require(request, "manage_users")
    return _page(request)


@router.post("/users/add")
async def add(request: Request) -> Response:
    require(request, "manage_users")
    f = await form(request)
    name, role = f.get("name", "").strip(), f.get("role", "viewer")
    password = generate_password()
    store = services(request).get_users()
    await run_change(request, store.add, name, role, password)
    audit(request, "user.add", f"user:{name}", {"role": role})
    return _page(request, new_password=(name, password))


@router.post("/users/{name}/role")
async def set_role(request: Request, name: str) -> Response:
    admin = require(request, "manage_users")
    f = await form(request)
    role = f.get("role", "")
    if name == admin.name and role != Role.ADMIN.value:
        return redirect("/users", request, "You cannot take away your own admin role; ask another admin.")
    await run_change(request, services(request).get_users().set_role, name, role)
    audit(request, "user.role", f"user:{name}", {"role": role})
    return redirect("/users", request, f"{name} is now {role}; their open sessions have ended.")


@router.post("/users/{name}/reset")
async def reset(request: Request, name: str) -> Response:
    require(request, "manage_users")
    password = generate_password()
    await run_change(request, services(request).get_users().set_password, name, password)
    audit(request, "user.passwd", f"user:{name}", {"reset": True})
    return _page(request, new_password=(name, password))


@router.post("/users/{name}/remove")
async def remove(request: Request, name: str) -> Response:
    admin = require(request, "manage_users")
    if name == admin.name:
        return redirect("/users", request, "You cannot remove yourself; ask another admin.")
    await run_change(request, services(request).get_users().remove, name)
    audit(request, "user.remove", f"user:{name}", {})
    return redirect("/users", request, f"Removed {name}.")
